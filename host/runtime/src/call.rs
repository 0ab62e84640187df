//! Calling hooks. A [`Caller`] runs typed hook calls either on a fresh instance per call or on
//! a [`LiveInstance`]; both arm the same two deadlines (an epoch deadline that traps guest code
//! and a wall-clock timeout around the whole async call, for guests blocked in I/O), the same
//! memory cap, and turn whatever happened into a value or a typed [`CallError`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::addon::{AddonCore, Exports, HookLimits};
use crate::error::{CallError, CallFailure, DeadlineCause};
use crate::live::LiveInstance;
use crate::logs::{LogStats, Logs};
use crate::sandbox::{CallContext, Denials};
use crate::state::{HostState, MemoryLimiter};
use crate::streams::{HostSink, HostSource};
use crate::wit::{
    Account, AddonManifest, ArchiveUnit, BackupInfo, ClassifiedChange, Command, File, Hook,
    HookError, Instance, Member, Param, ParamChange, ParamError, RecoveryTarget, Resources,
    RoleReport, RunPlan, Sample,
};

/// Extra wall-clock time past the deadline before the async call is abandoned, so a guest that
/// is computing is stopped by its epoch deadline (and reported as such) first.
const WALL_GRACE: Duration = Duration::from_millis(50);

/// Most resources (files, sockets, streams) one addon instance may hold at once.
pub(crate) const MAX_RESOURCES: usize = 1024;

/// Statistics of the last call made through a [`Caller`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Time from setting the call up to its result, instantiation included.
    pub elapsed: Duration,
    /// What the log budget did.
    pub logs: LogStats,
}

enum Target<'a> {
    Fresh {
        core: &'a Arc<AddonCore>,
        ctx: &'a CallContext,
    },
    Live(&'a LiveInstance),
}

/// Typed hook calls on one addon. Get one from [`crate::LoadedAddon::call`] (a fresh instance
/// per call) or [`LiveInstance::call`] (one kept instance).
pub struct Caller<'a> {
    target: Target<'a>,
    last: Mutex<Option<CallStats>>,
}

impl<'a> Caller<'a> {
    pub(crate) fn fresh(core: &'a Arc<AddonCore>, ctx: &'a CallContext) -> Self {
        Caller {
            target: Target::Fresh { core, ctx },
            last: Mutex::new(None),
        }
    }

    pub(crate) fn live(live: &'a LiveInstance) -> Self {
        Caller {
            target: Target::Live(live),
            last: Mutex::new(None),
        }
    }

    /// Statistics of the last call made through this caller.
    pub fn last_stats(&self) -> Option<CallStats> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn invoke<T, F>(&self, hook: Hook, f: F) -> Result<T, CallError>
    where
        F: AsyncFnOnce(
            &Exports<'_>,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<T, HookError>>,
    {
        let (result, stats, core) = match &self.target {
            Target::Fresh { core, ctx } => {
                let (r, s) = run_fresh(core, ctx, hook, f).await;
                (r, s, *core)
            }
            Target::Live(live) => {
                let (r, s) = live.run(hook, f).await;
                (r, s, &live.core)
            }
        };
        core.count(hook, stats.elapsed, result.as_ref().err());
        let name = core.name.clone();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        result.map_err(|failure| CallError {
            addon: name.to_string(),
            hook,
            failure,
        })
    }

    /// `metadata.manifest`.
    pub async fn manifest(&self) -> Result<AddonManifest, CallError> {
        self.invoke(Hook::Manifest, async |a, s| a.manifest(s).await)
            .await
    }

    /// The manifest, after type-checking every interface the addon exports (at load).
    pub(crate) async fn checked_manifest(&self) -> Result<AddonManifest, CallError> {
        self.invoke(Hook::Manifest, async |a, s| {
            a.check_all(s)?;
            a.manifest(s).await
        })
        .await
    }

    /// `lifecycle.run-spec`.
    pub async fn run_spec(
        &self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> Result<RunPlan, CallError> {
        self.invoke(Hook::RunSpec, async |a, s| {
            a.lifecycle(s)?
                .call_run_spec(s, instance, members, params)
                .await
        })
        .await
    }

    /// `lifecycle.render-config`.
    pub async fn render_config(
        &self,
        instance: &Instance,
        members: &[Member],
        params: &[Param],
    ) -> Result<Vec<File>, CallError> {
        self.invoke(Hook::RenderConfig, async |a, s| {
            a.lifecycle(s)?
                .call_render_config(s, instance, members, params)
                .await
        })
        .await
    }

    /// `lifecycle.post-provision`.
    pub async fn post_provision(
        &self,
        instance: &Instance,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::PostProvision, async |a, s| {
            a.lifecycle(s)?
                .call_post_provision(s, instance, members)
                .await
        })
        .await
    }

    /// `lifecycle.pre-terminate`.
    pub async fn pre_terminate(
        &self,
        instance: &Instance,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::PreTerminate, async |a, s| {
            a.lifecycle(s)?
                .call_pre_terminate(s, instance, members)
                .await
        })
        .await
    }

    /// `lifecycle.member-join`.
    pub async fn member_join(
        &self,
        instance: &Instance,
        joining: &Member,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::MemberJoin, async |a, s| {
            a.lifecycle(s)?
                .call_member_join(s, instance, joining, members)
                .await
        })
        .await
    }

    /// `lifecycle.member-leave`.
    pub async fn member_leave(
        &self,
        instance: &Instance,
        leaving: &Member,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::MemberLeave, async |a, s| {
            a.lifecycle(s)?
                .call_member_leave(s, instance, leaving, members)
                .await
        })
        .await
    }

    /// `lifecycle.form-shards`.
    pub async fn form_shards(
        &self,
        instance: &Instance,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::FormShards, async |a, s| {
            a.lifecycle(s)?.call_form_shards(s, instance, members).await
        })
        .await
    }

    /// `lifecycle.account-provision`.
    pub async fn account_provision(
        &self,
        instance: &Instance,
        account: &Account,
    ) -> Result<(), CallError> {
        self.invoke(Hook::AccountProvision, async |a, s| {
            a.lifecycle(s)?
                .call_account_provision(s, instance, account)
                .await
        })
        .await
    }

    /// `ha.probe`.
    pub async fn probe(
        &self,
        instance: &Instance,
        members: &[Member],
    ) -> Result<RoleReport, CallError> {
        self.invoke(Hook::Probe, async |a, s| {
            a.ha(s)?.call_probe(s, instance, members).await
        })
        .await
    }

    /// `ha.promote`.
    pub async fn promote(
        &self,
        instance: &Instance,
        term: u64,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::Promote, async |a, s| {
            a.ha(s)?.call_promote(s, instance, term, members).await
        })
        .await
    }

    /// `ha.demote`.
    pub async fn demote(
        &self,
        instance: &Instance,
        new_primary: Option<&Member>,
        members: &[Member],
    ) -> Result<(), CallError> {
        let new_primary = new_primary.cloned();
        self.invoke(Hook::Demote, async |a, s| {
            a.ha(s)?
                .call_demote(s, instance, new_primary.as_ref(), members)
                .await
        })
        .await
    }

    /// `ha.switchover`.
    pub async fn switchover(
        &self,
        instance: &Instance,
        candidate: &Member,
        members: &[Member],
    ) -> Result<(), CallError> {
        self.invoke(Hook::Switchover, async |a, s| {
            a.ha(s)?
                .call_switchover(s, instance, candidate, members)
                .await
        })
        .await
    }

    /// `ha.rebuild`.
    pub async fn rebuild(
        &self,
        instance: &Instance,
        source: &Member,
        members: &[Member],
    ) -> Result<Vec<Command>, CallError> {
        self.invoke(Hook::Rebuild, async |a, s| {
            a.ha(s)?.call_rebuild(s, instance, source, members).await
        })
        .await
    }

    /// `ha.set-sync`.
    pub async fn set_sync(
        &self,
        instance: &Instance,
        standbys: &[Member],
        quorum: u32,
    ) -> Result<(), CallError> {
        self.invoke(Hook::SetSync, async |a, s| {
            a.ha(s)?.call_set_sync(s, instance, standbys, quorum).await
        })
        .await
    }

    /// `ha.recover-quorum`.
    pub async fn recover_quorum(
        &self,
        instance: &Instance,
        params: &[Param],
    ) -> Result<RunPlan, CallError> {
        self.invoke(Hook::RecoverQuorum, async |a, s| {
            a.ha(s)?.call_recover_quorum(s, instance, params).await
        })
        .await
    }

    /// `backup.backup`: the addon writes into `sink`, which is handed back with the result so
    /// the caller can finish it (flush, seal, checksum).
    pub async fn backup(
        &self,
        instance: &Instance,
        method: &str,
        params: &[Param],
        sink: HostSink,
    ) -> Result<(BackupInfo, HostSink), CallError> {
        self.invoke(Hook::Backup, async |a, s| {
            let res = s.data_mut().table.push(sink)?;
            let borrowed = Resource::new_borrow(res.rep());
            let out = a
                .backup(&mut *s)?
                .call_backup(&mut *s, instance, method, params, borrowed)
                .await;
            let sink = take(&mut s.data_mut().table, res)?;
            finish_sink(out?, sink, s).await
        })
        .await
    }

    /// `backup.restore`: the addon reads the backup from `source`.
    pub async fn restore(
        &self,
        instance: &Instance,
        members: &[Member],
        info: &BackupInfo,
        source: HostSource,
        recovery_follows: bool,
    ) -> Result<u64, CallError> {
        self.invoke(Hook::Restore, async |a, s| {
            let res = s.data_mut().table.push(source)?;
            let borrowed = Resource::new_borrow(res.rep());
            let out = a
                .backup(&mut *s)?
                .call_restore(&mut *s, instance, members, info, borrowed, recovery_follows)
                .await;
            let source = take(&mut s.data_mut().table, res)?;
            Ok(out?.map(|()| source.read))
        })
        .await
    }

    /// `backup.archive-continuous`.
    pub async fn archive_continuous(
        &self,
        instance: &Instance,
        after: Option<&str>,
        sink: HostSink,
    ) -> Result<(Option<ArchiveUnit>, HostSink), CallError> {
        self.invoke(Hook::ArchiveContinuous, async |a, s| {
            let res = s.data_mut().table.push(sink)?;
            let borrowed = Resource::new_borrow(res.rep());
            let out = a
                .backup(&mut *s)?
                .call_archive_continuous(&mut *s, instance, after, borrowed)
                .await;
            let sink = take(&mut s.data_mut().table, res)?;
            finish_sink(out?, sink, s).await
        })
        .await
    }

    /// `backup.restore-to-time`.
    pub async fn restore_to_time(
        &self,
        instance: &Instance,
        base: &BackupInfo,
        target: &RecoveryTarget,
        archive_dir: &str,
    ) -> Result<(), CallError> {
        self.invoke(Hook::RestoreToTime, async |a, s| {
            a.backup(s)?
                .call_restore_to_time(s, instance, base, target, archive_dir)
                .await
        })
        .await
    }

    /// `config.validate`.
    pub async fn validate(&self, params: &[Param]) -> Result<Vec<ParamError>, CallError> {
        self.invoke(Hook::Validate, async |a, s| {
            a.config(s)?.call_validate(s, params).await
        })
        .await
    }

    /// `config.classify`.
    pub async fn classify(
        &self,
        changes: &[ParamChange],
    ) -> Result<Vec<ClassifiedChange>, CallError> {
        self.invoke(Hook::Classify, async |a, s| {
            a.config(s)?.call_classify(s, changes).await
        })
        .await
    }

    /// `config.apply-dynamic`.
    pub async fn apply_dynamic(
        &self,
        instance: &Instance,
        changes: &[ParamChange],
    ) -> Result<(), CallError> {
        self.invoke(Hook::ApplyDynamic, async |a, s| {
            a.config(s)?.call_apply_dynamic(s, instance, changes).await
        })
        .await
    }

    /// `config.effective`.
    pub async fn effective(
        &self,
        params: &[Param],
        resources: Resources,
    ) -> Result<Vec<Param>, CallError> {
        self.invoke(Hook::Effective, async |a, s| {
            a.config(s)?.call_effective(s, params, resources).await
        })
        .await
    }

    /// `telemetry.metrics`.
    pub async fn metrics(&self, instance: &Instance) -> Result<Vec<Sample>, CallError> {
        self.invoke(Hook::Metrics, async |a, s| {
            a.telemetry(s)?.call_metrics(s, instance).await
        })
        .await
    }

    /// `data.write-marker` (`unsupported` for addons of API 0.1.0).
    pub async fn write_marker(
        &self,
        instance: &Instance,
        members: &[Member],
        key: &str,
        value: &str,
    ) -> Result<(), CallError> {
        self.invoke(Hook::WriteMarker, async |a, s| match a.data(s)? {
            Some(d) => d.call_write_marker(s, instance, members, key, value).await,
            None => Ok(Err(HookError::Unsupported)),
        })
        .await
    }

    /// `data.read-markers` (`unsupported` for addons of API 0.1.0).
    pub async fn read_markers(
        &self,
        instance: &Instance,
        members: &[Member],
        keys: &[String],
    ) -> Result<Vec<Option<String>>, CallError> {
        self.invoke(Hook::ReadMarkers, async |a, s| match a.data(s)? {
            Some(d) => d.call_read_markers(s, instance, members, keys).await,
            None => Ok(Err(HookError::Unsupported)),
        })
        .await
    }
}

fn take<T: 'static>(table: &mut ResourceTable, res: Resource<T>) -> wasmtime::Result<T> {
    Ok(table.delete(res)?)
}

/// After a successful streaming hook, flush and shut the sink down so buffered bytes and
/// encoders reach their destination; a failure there (or an earlier write error the addon
/// ignored) fails the call instead of leaving a silently short stream.
async fn finish_sink<T>(
    out: Result<T, HookError>,
    mut sink: HostSink,
    store: &mut Store<HostState>,
) -> wasmtime::Result<Result<(T, HostSink), HookError>> {
    let value = match out {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(e) = sink.failed.take() {
        store.data_mut().sink_error = Some(e);
    } else if let Err(e) = tokio::io::AsyncWriteExt::shutdown(&mut sink.writer).await {
        store.data_mut().sink_error = Some(format!("finishing the stream: {e}"));
    }
    Ok(Ok((value, sink)))
}

/// A Store for `core` with the permissions of `ctx`, not yet armed for a call.
pub(crate) fn new_store(
    core: &AddonCore,
    ctx: &CallContext,
    hook: Hook,
) -> Result<Store<HostState>, CallFailure> {
    let cfg = &core.rt.inner.config;
    let logs = Logs::new(
        core.name.clone(),
        hook,
        cfg.log_budget_bytes,
        cfg.log_line_bytes,
    );
    let denials = Denials::default();
    let wasi = core
        .sandbox
        .wasi(ctx, &logs, &denials)
        .map_err(CallFailure::Setup)?;
    let mut table = ResourceTable::new();
    // Every WASI file or socket holds a host descriptor: cap them per instance.
    table.set_max_capacity(MAX_RESOURCES);
    let state = HostState {
        wasi,
        table,
        limiter: MemoryLimiter::new(
            usize::try_from(cfg.default_memory_bytes).unwrap_or(usize::MAX),
        ),
        addon: core.name.clone(),
        logs,
        denials,
        sandbox: core.sandbox.clone(),
        run_as: ctx.run_as,
        exec_dirs: ctx.exec_dirs.clone(),
        progress: crate::state::ProgressGate::new(ctx.progress.clone(), core.name.clone()),
        sink_error: None,
        exec_capture: cfg.exec_capture_bytes,
        deadline: Instant::now(),
    };
    let mut store = Store::new(&core.rt.inner.engine, state);
    store.limiter(|s| &mut s.limiter);
    Ok(store)
}

/// Reset per-call state and set both deadlines and the memory cap for a call of `hook`.
///
/// Guest code is interrupted at every epoch tick: before the deadline it yields to the async
/// executor (so a computing guest never monopolises a worker thread and the wall-clock timer
/// stays live), at or after the deadline it traps.
pub(crate) fn arm(store: &mut Store<HostState>, hook: Hook, limits: HookLimits) {
    let deadline = Instant::now() + limits.timeout;
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store.set_epoch_deadline(1);
    let data = store.data_mut();
    data.deadline = deadline;
    data.limiter.limit = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    data.limiter.refused = None;
    data.logs.reset(hook);
    data.denials.take();
    data.progress.reset();
}

/// Run `f` under the wall-clock deadline of `limits`.
pub(crate) async fn under_deadline<T>(
    limits: HookLimits,
    fut: impl std::future::Future<Output = wasmtime::Result<Result<T, HookError>>>,
) -> Result<wasmtime::Result<Result<T, HookError>>, tokio::time::error::Elapsed> {
    tokio::time::timeout(limits.timeout + WALL_GRACE, fut).await
}

/// Turn the outcome of a call into a value or a [`CallFailure`], using what the store saw.
/// Denials the addon recovered from are logged, not reported: only a `failed` hook error (or
/// a trap) after a denial becomes [`CallFailure::Denied`].
pub(crate) fn settle<T>(
    outcome: Result<wasmtime::Result<Result<T, HookError>>, tokio::time::error::Elapsed>,
    state: &mut HostState,
    limits: HookLimits,
) -> Result<T, CallFailure> {
    state.progress.flush();
    let result = match outcome {
        Err(_) => Err(CallFailure::Deadline {
            limit: limits.timeout,
            cause: DeadlineCause::WallClock,
        }),
        Ok(Ok(Ok(v))) => match state.sink_error.take() {
            // The addon ignored a failed write: the stream is incomplete.
            Some(e) => Err(CallFailure::Stream(e)),
            None => Ok(v),
        },
        Ok(Ok(Err(HookError::Failed(message)))) if !state.denials.is_empty() => {
            Err(CallFailure::Denied {
                denials: state.denials.take(),
                guest: Some(HookError::Failed(message).to_string()),
            })
        }
        Ok(Ok(Err(hook_error))) => Err(CallFailure::Hook(hook_error)),
        Ok(Err(trap)) => Err(classify_trap(&trap, state, limits)),
    };
    let leftover = state.denials.take();
    if !leftover.is_empty() {
        tracing::warn!(
            target: "shoal::addon",
            addon = %state.addon,
            "sandbox denials during the call: {}",
            leftover.join("; ")
        );
    }
    result
}

fn classify_trap(trap: &wasmtime::Error, state: &HostState, limits: HookLimits) -> CallFailure {
    if let Some(full) = trap.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return CallFailure::Busy(format!("{full}; raise max_instances or retry later"));
    }
    if trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallFailure::Deadline {
            limit: limits.timeout,
            cause: DeadlineCause::Epoch,
        };
    }
    if let Some(message) = state.logs.panic_message() {
        return CallFailure::Panic(message);
    }
    if let Some(requested) = state.limiter.refused {
        return CallFailure::OutOfMemory {
            limit: limits.memory_bytes,
            requested: requested as u64,
        };
    }
    if !state.denials.is_empty() {
        return CallFailure::Denied {
            denials: state.denials.take(),
            guest: None,
        };
    }
    let text = describe_trap(trap);
    if text.contains("resource table has no free keys") {
        return CallFailure::Trap(format!(
            "too many open files, sockets or streams (the limit is {MAX_RESOURCES} per addon \
             instance): {text}"
        ));
    }
    CallFailure::Trap(text)
}

/// A one-line description of a trap: its code (or root cause) and the innermost named guest
/// function, demangled enough to read.
fn describe_trap(e: &wasmtime::Error) -> String {
    let what = match e.downcast_ref::<Trap>() {
        Some(code) => code.to_string(),
        None => e.root_cause().to_string(),
    };
    let place = e
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| bt.frames().iter().find_map(|f| f.func_name().map(demangle)));
    match place {
        Some(func) => format!("{what} (in {func})"),
        None => what,
    }
}

/// Readable form of a Rust legacy-mangled symbol (`_ZN5crate4func17h0123456789abcdefE` →
/// `crate::func`); anything else is returned unchanged.
fn demangle(symbol: &str) -> String {
    let Some(mut rest) = symbol.strip_prefix("_ZN").and_then(|s| s.strip_suffix('E')) else {
        return symbol.to_string();
    };
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let Ok(len) = rest[..digits].parse::<usize>() else {
            return symbol.to_string();
        };
        let Some(end) = digits.checked_add(len) else {
            return symbol.to_string();
        };
        let Some(part) = rest.get(digits..end) else {
            return symbol.to_string();
        };
        rest = &rest[end..];
        let is_hash = part.len() == 17
            && part.starts_with('h')
            && part[1..].chars().all(|c| c.is_ascii_hexdigit());
        if !is_hash {
            parts.push(part);
        }
    }
    parts.join("::")
}

async fn run_fresh<T, F>(
    core: &Arc<AddonCore>,
    ctx: &CallContext,
    hook: Hook,
    f: F,
) -> (Result<T, CallFailure>, CallStats)
where
    F: AsyncFnOnce(&Exports<'_>, &mut Store<HostState>) -> wasmtime::Result<Result<T, HookError>>,
{
    let started = Instant::now();
    let limits = core.limits(hook);
    let mut store = match new_store(core, ctx, hook) {
        Ok(s) => s,
        Err(e) => return (Err(e), CallStats::default()),
    };
    arm(&mut store, hook, limits);
    let outcome = under_deadline(limits, async {
        let instance = core.pre.instantiate_async(&mut store).await?;
        let exports = Exports {
            instance,
            indices: &core.indices,
        };
        f(&exports, &mut store).await
    })
    .await;
    let result = settle(outcome, store.data_mut(), limits);
    let logs = store.data().logs.finish();
    (
        result,
        CallStats {
            elapsed: started.elapsed(),
            logs,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::demangle;

    #[test]
    fn demangles_rust_legacy_symbols() {
        assert_eq!(
            demangle("_ZN21shoal_fixture_hostile7recurse17h0286b1aaffb9da69E"),
            "shoal_fixture_hostile::recurse"
        );
        assert_eq!(demangle("plain_name"), "plain_name");
        assert_eq!(demangle("_ZN99brokenE"), "_ZN99brokenE");
        assert_eq!(
            demangle("_ZN18446744073709551615xE"),
            "_ZN18446744073709551615xE"
        );
    }
}
