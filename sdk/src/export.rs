//! The glue between the generated WIT export traits and [`Engine`]: [`export_engine!`] defines a
//! provider type in the addon crate that owns the one engine value, and the blanket impls below
//! route every export to it.

use crate::bindings::exports::shoal::addon::{
    backup, config, data, ha, lifecycle, metadata, telemetry,
};
use crate::bindings::shoal::addon::host::{Sink, Source};
use crate::host::{SinkWriter, SourceReader};
use crate::lifecycle::Command;
use crate::{Engine, HookError, Instance, Member, Param, Resources};

/// Implemented by the type [`export_engine!`] defines; not for direct use.
pub trait Provider {
    /// The addon's engine type.
    type Engine: Engine;
    /// Run `f` on the addon instance's engine value, creating it on first use.
    fn with<R>(f: impl FnOnce(&mut Self::Engine) -> R) -> R;
}

/// Export `$engine` (a type implementing [`Engine`](crate::Engine)) as a Shoal addon.
/// Call it exactly once, at the top level of the addon's crate (a `cdylib`).
#[macro_export]
macro_rules! export_engine {
    ($engine:ty) => {
        #[doc(hidden)]
        struct __ShoalAddon;

        impl $crate::__private::Provider for __ShoalAddon {
            type Engine = $engine;
            fn with<R>(f: impl FnOnce(&mut $engine) -> R) -> R {
                ::std::thread_local! {
                    static ENGINE: ::std::cell::RefCell<::std::option::Option<$engine>> =
                        const { ::std::cell::RefCell::new(::std::option::Option::None) };
                }
                ENGINE.with(|cell| {
                    let mut slot = cell.borrow_mut();
                    let engine = slot.get_or_insert_with(<$engine as $crate::Engine>::new);
                    f(engine)
                })
            }
        }

        $crate::bindings::__export_addon!(__ShoalAddon with_types_in $crate::bindings);
    };
}

impl<P: Provider> metadata::Guest for P {
    fn manifest() -> metadata::AddonManifest {
        P::with(|e| e.manifest())
    }
}

impl<P: Provider> lifecycle::Guest for P {
    fn run_spec(
        instance: Instance,
        members: Vec<Member>,
        params: Vec<Param>,
    ) -> Result<lifecycle::RunPlan, HookError> {
        P::with(|e| e.run_spec(&instance, &members, &params))
    }

    fn render_config(
        instance: Instance,
        members: Vec<Member>,
        params: Vec<Param>,
    ) -> Result<Vec<crate::File>, HookError> {
        P::with(|e| e.render_config(&instance, &members, &params))
    }

    fn post_provision(instance: Instance, members: Vec<Member>) -> Result<(), HookError> {
        P::with(|e| e.post_provision(&instance, &members))
    }

    fn pre_terminate(instance: Instance, members: Vec<Member>) -> Result<(), HookError> {
        P::with(|e| e.pre_terminate(&instance, &members))
    }

    fn member_join(
        instance: Instance,
        joining: Member,
        members: Vec<Member>,
    ) -> Result<(), HookError> {
        P::with(|e| e.member_join(&instance, &joining, &members))
    }

    fn member_leave(
        instance: Instance,
        leaving: Member,
        members: Vec<Member>,
    ) -> Result<(), HookError> {
        P::with(|e| e.member_leave(&instance, &leaving, &members))
    }

    fn form_shards(instance: Instance, members: Vec<Member>) -> Result<(), HookError> {
        P::with(|e| e.form_shards(&instance, &members))
    }

    fn account_provision(instance: Instance, account: lifecycle::Account) -> Result<(), HookError> {
        P::with(|e| e.account_provision(&instance, &account))
    }
}

impl<P: Provider> ha::Guest for P {
    fn probe(instance: Instance, members: Vec<Member>) -> Result<ha::RoleReport, HookError> {
        P::with(|e| e.probe(&instance, &members))
    }

    fn promote(instance: Instance, term: u64, members: Vec<Member>) -> Result<(), HookError> {
        P::with(|e| e.promote(&instance, term, &members))
    }

    fn demote(
        instance: Instance,
        new_primary: Option<Member>,
        members: Vec<Member>,
    ) -> Result<(), HookError> {
        P::with(|e| e.demote(&instance, new_primary.as_ref(), &members))
    }

    fn switchover(
        instance: Instance,
        candidate: Member,
        members: Vec<Member>,
    ) -> Result<(), HookError> {
        P::with(|e| e.switchover(&instance, &candidate, &members))
    }

    fn rebuild(
        instance: Instance,
        source: Member,
        members: Vec<Member>,
    ) -> Result<Vec<Command>, HookError> {
        P::with(|e| e.rebuild(&instance, &source, &members))
    }

    fn set_sync(instance: Instance, standbys: Vec<Member>, quorum: u32) -> Result<(), HookError> {
        P::with(|e| e.set_sync(&instance, &standbys, quorum))
    }

    fn recover_quorum(
        instance: Instance,
        params: Vec<Param>,
    ) -> Result<lifecycle::RunPlan, HookError> {
        P::with(|e| e.recover_quorum(&instance, &params))
    }
}

impl<P: Provider> backup::Guest for P {
    fn backup(
        instance: Instance,
        method: String,
        params: Vec<Param>,
        into: &Sink,
    ) -> Result<backup::BackupInfo, HookError> {
        let mut writer = SinkWriter::new(into);
        P::with(|e| e.backup(&instance, &method, &params, &mut writer))
    }

    fn restore(
        instance: Instance,
        members: Vec<Member>,
        info: backup::BackupInfo,
        from: &Source,
        recovery_follows: bool,
    ) -> Result<(), HookError> {
        let mut reader = SourceReader::new(from);
        P::with(|e| e.restore(&instance, &members, &info, &mut reader, recovery_follows))
    }

    fn archive_continuous(
        instance: Instance,
        after: Option<String>,
        into: &Sink,
    ) -> Result<Option<backup::ArchiveUnit>, HookError> {
        let mut writer = SinkWriter::new(into);
        P::with(|e| e.archive_continuous(&instance, after.as_deref(), &mut writer))
    }

    fn restore_to_time(
        instance: Instance,
        base: backup::BackupInfo,
        target: backup::RecoveryTarget,
        archive_dir: String,
    ) -> Result<(), HookError> {
        P::with(|e| e.restore_to_time(&instance, &base, &target, &archive_dir))
    }
}

impl<P: Provider> config::Guest for P {
    fn validate(params: Vec<Param>) -> Result<Vec<config::ParamError>, HookError> {
        P::with(|e| e.validate(&params))
    }

    fn classify(
        changes: Vec<config::ParamChange>,
    ) -> Result<Vec<config::ClassifiedChange>, HookError> {
        P::with(|e| e.classify(&changes))
    }

    fn apply_dynamic(
        instance: Instance,
        changes: Vec<config::ParamChange>,
    ) -> Result<(), HookError> {
        P::with(|e| e.apply_dynamic(&instance, &changes))
    }

    fn effective(params: Vec<Param>, resources: Resources) -> Result<Vec<Param>, HookError> {
        P::with(|e| e.effective(&params, &resources))
    }
}

impl<P: Provider> telemetry::Guest for P {
    fn metrics(instance: Instance) -> Result<Vec<telemetry::Sample>, HookError> {
        P::with(|e| e.metrics(&instance))
    }
}

impl<P: Provider> data::Guest for P {
    fn write_marker(
        instance: Instance,
        members: Vec<Member>,
        key: String,
        value: String,
    ) -> Result<(), HookError> {
        P::with(|e| e.write_marker(&instance, &members, &key, &value))
    }

    fn read_markers(
        instance: Instance,
        members: Vec<Member>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<String>>, HookError> {
        P::with(|e| e.read_markers(&instance, &members, &keys))
    }
}
