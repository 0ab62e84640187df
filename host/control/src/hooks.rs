//! Addon calls about one instance of a cluster, with the records its hooks see built in one
//! place: the sandbox context (its own and its members' addresses, and its directories when
//! the hook works on them), the `instance` record and the `members` list. The lifecycle
//! hooks and the HA hooks (`promote`, `demote`, `switchover`, `rebuild`, `set-sync`) go
//! through it. Hooks an engine may leave out (`unsupported`) are
//! folded here into [`Ran::Unsupported`], once, instead of at every call site.

use shoal_runtime::wit;
use shoal_runtime::CallError;

use crate::controller::Controller;
use crate::secrets::Credentials;
use crate::store::{ClusterRow, InstanceRow};

/// Whether an optional hook ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ran {
    Yes,
    /// The engine has no such hook: nothing to do.
    Unsupported,
}

/// Fold `unsupported` out of a hook's result.
pub(crate) fn optional(r: Result<(), CallError>) -> Result<Ran, CallError> {
    match r {
        Ok(()) => Ok(Ran::Yes),
        Err(e) if e.is_unsupported() => Ok(Ran::Unsupported),
        Err(e) => Err(e),
    }
}

/// The lifecycle hooks of `on`, one member of `cl` whose instances are `all`.
pub(crate) struct Hooks<'a> {
    c: &'a Controller,
    addon: &'a shoal_runtime::LoadedAddon,
    cl: &'a ClusterRow,
    on: &'a InstanceRow,
    all: &'a [InstanceRow],
    cr: &'a Credentials,
    /// Grant the instance's data and config directories (hooks that read or change files).
    dirs: bool,
    /// Hand the directories as the server process sees them (a plan the host runs).
    process_paths: bool,
}

impl Controller {
    /// The hooks of instance `on` of `cl` (whose instances are `all`), called with the
    /// platform account `cr`; `Err` when the cluster's engine is not loaded.
    pub(crate) fn hooks<'a>(
        &'a self,
        cl: &'a ClusterRow,
        on: &'a InstanceRow,
        all: &'a [InstanceRow],
        cr: &'a Credentials,
    ) -> Result<Hooks<'a>, String> {
        Ok(Hooks {
            c: self,
            addon: self.addon(&cl.engine).map_err(|e| e.message)?,
            cl,
            on,
            all,
            cr,
            dirs: false,
            process_paths: false,
        })
    }
}

impl Hooks<'_> {
    /// The hook works on the instance's files: its data and config directories are granted.
    pub(crate) fn with_dirs(mut self) -> Self {
        self.dirs = true;
        self
    }

    /// The hook returns commands the host runs: the instance record names the directories as
    /// the server process sees them.
    pub(crate) fn with_process_paths(mut self) -> Self {
        self.process_paths = true;
        self
    }

    fn parts(&self) -> (shoal_runtime::CallContext, wit::Instance, Vec<wit::Member>) {
        (
            self.c.call_ctx(self.on, self.all, self.dirs),
            self.c
                .wit_instance(self.cl, self.on, self.cr, self.process_paths),
            Controller::members_of(self.on, self.all),
        )
    }

    /// `promote` at `term`.
    pub(crate) async fn promote(&self, term: u64) -> Result<(), CallError> {
        let (ctx, mut inst, members) = self.parts();
        inst.term = term;
        self.addon.call(&ctx).promote(&inst, term, &members).await
    }

    /// `demote`, following `primary` (none: stand alone, read-only).
    pub(crate) async fn demote(&self, primary: Option<&InstanceRow>) -> Result<(), CallError> {
        let (ctx, inst, members) = self.parts();
        let p = primary.map(Controller::wit_member);
        self.addon
            .call(&ctx)
            .demote(&inst, p.as_ref(), &members)
            .await
    }

    /// `switchover` to `to`: stop writes here and wait until `to` has everything.
    pub(crate) async fn switchover(&self, to: &InstanceRow) -> Result<Ran, CallError> {
        let (ctx, inst, members) = self.parts();
        let m = Controller::wit_member(to);
        optional(self.addon.call(&ctx).switchover(&inst, &m, &members).await)
    }

    /// `rebuild` from `primary`: the commands that rewind this instance onto it (none, or
    /// `unsupported`: copy afresh).
    pub(crate) async fn rebuild(
        &self,
        primary: &InstanceRow,
    ) -> Result<Vec<wit::Command>, CallError> {
        let (ctx, inst, members) = self.parts();
        let p = Controller::wit_member(primary);
        self.addon.call(&ctx).rebuild(&inst, &p, &members).await
    }

    /// `set-sync`: make `quorum` of the other members synchronous standbys.
    pub(crate) async fn set_sync(&self, quorum: u32) -> Result<(), CallError> {
        let (ctx, inst, members) = self.parts();
        self.addon
            .call(&ctx)
            .set_sync(&inst, &members, quorum)
            .await
    }

    /// `write-marker`: store `value` under `key` through this instance.
    pub(crate) async fn write_marker(&self, key: &str, value: &str) -> Result<(), CallError> {
        let (ctx, inst, members) = self.parts();
        self.addon
            .call(&ctx)
            .write_marker(&inst, &members, key, value)
            .await
    }

    /// `read-markers`: the values under `keys` as this instance sees them.
    pub(crate) async fn read_markers(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<String>>, CallError> {
        let (ctx, inst, members) = self.parts();
        self.addon
            .call(&ctx)
            .read_markers(&inst, &members, keys)
            .await
    }

    /// `post-provision`.
    pub(crate) async fn post_provision(&self) -> Result<Ran, CallError> {
        let addon = self.addon;
        let (ctx, inst, members) = self.parts();
        optional(addon.call(&ctx).post_provision(&inst, &members).await)
    }

    /// `pre-terminate`.
    pub(crate) async fn pre_terminate(&self) -> Result<Ran, CallError> {
        let addon = self.addon;
        let (ctx, inst, members) = self.parts();
        optional(addon.call(&ctx).pre_terminate(&inst, &members).await)
    }

    /// `member-join` of `joining`, on this member.
    pub(crate) async fn member_join(&self, joining: &InstanceRow) -> Result<Ran, CallError> {
        let addon = self.addon;
        let (ctx, inst, members) = self.parts();
        let m = Controller::wit_member(joining);
        optional(addon.call(&ctx).member_join(&inst, &m, &members).await)
    }

    /// `member-leave` of `leaving`, on this member.
    pub(crate) async fn member_leave(&self, leaving: &InstanceRow) -> Result<Ran, CallError> {
        let addon = self.addon;
        let (ctx, inst, members) = self.parts();
        let m = Controller::wit_member(leaving);
        optional(addon.call(&ctx).member_leave(&inst, &m, &members).await)
    }

    /// `form-shards`, on this member.
    pub(crate) async fn form_shards(&self) -> Result<Ran, CallError> {
        let addon = self.addon;
        let (ctx, inst, members) = self.parts();
        optional(addon.call(&ctx).form_shards(&inst, &members).await)
    }
}
