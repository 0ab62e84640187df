//! Addon calls about one instance of a cluster, with the records its hooks see built in one
//! place: the sandbox context (its own and its members' addresses), the `instance` record
//! (guest paths) and the `members` list. Hooks an engine may leave out (`unsupported`) are
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
        })
    }
}

impl Hooks<'_> {
    fn parts(&self) -> (shoal_runtime::CallContext, wit::Instance, Vec<wit::Member>) {
        (
            self.c.call_ctx(self.on, self.all, false),
            self.c.wit_instance(self.cl, self.on, self.cr, false),
            Controller::members_of(self.on, self.all),
        )
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
