//! Long-lived addon instances: one Store kept per database instance so state survives between
//! calls (a probe keeps its connection open instead of reconnecting every second). Calls are
//! serialised per instance and run under the same per-hook limits as fresh calls; after a
//! trap, a deadline or `live_recycle_calls` calls the Store is dropped and the next call
//! starts a new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::time::Instant;
use wasmtime::component::Instance;
use wasmtime::Store;

use crate::addon::{AddonCore, Exports};
use crate::call::{arm, new_store, settle, under_deadline, CallStats, Caller, MAX_RESOURCES};
use crate::error::CallFailure;
use crate::sandbox::CallContext;
use crate::state::HostState;
use crate::wit::{Hook, HookError};

struct Kept {
    store: Store<HostState>,
    instance: Instance,
    calls: u64,
}

/// A kept addon instance bound to one call context. See the module docs.
pub struct LiveInstance {
    pub(crate) core: Arc<AddonCore>,
    ctx: CallContext,
    slot: Mutex<Option<Kept>>,
    starts: AtomicU64,
}

impl LiveInstance {
    pub(crate) fn new(core: Arc<AddonCore>, ctx: CallContext) -> Self {
        LiveInstance {
            core,
            ctx,
            slot: Mutex::new(None),
            starts: AtomicU64::new(0),
        }
    }

    /// Typed hook calls on this instance.
    pub fn call(&self) -> Caller<'_> {
        Caller::live(self)
    }

    /// How many Stores this live instance has started (1 after the first call; more after
    /// recycling).
    pub fn generation(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// Whether a Store is currently kept.
    pub async fn is_warm(&self) -> bool {
        self.slot.lock().await.is_some()
    }

    /// Drop the kept Store now; the next call starts a fresh one.
    pub async fn recycle(&self) {
        *self.slot.lock().await = None;
    }

    pub(crate) async fn run<T, F>(&self, hook: Hook, f: F) -> (Result<T, CallFailure>, CallStats)
    where
        F: AsyncFnOnce(
            &Exports<'_>,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<T, HookError>>,
    {
        let started = Instant::now();
        let core = &self.core;
        let limits = core.limits(hook);
        let recycle_after = core.rt.inner.config.live_recycle_calls.max(1);
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|k| k.calls >= recycle_after) {
            *slot = None;
        }

        let (result, logs, keep) = match slot.take() {
            Some(mut kept) => {
                arm(&mut kept.store, hook, limits);
                let exports = Exports {
                    instance: kept.instance,
                    indices: &core.indices,
                };
                let outcome = under_deadline(limits, f(&exports, &mut kept.store)).await;
                let result = settle(outcome, kept.store.data_mut(), limits);
                let logs = kept.store.data().logs.finish();
                kept.calls += 1;
                // A store that piles up open resources is leaking them: start over.
                let crowded = kept.store.data_mut().table.iter_mut().count() > MAX_RESOURCES / 2;
                let keep = (keeps_store(&result) && !crowded).then_some(kept);
                (result, logs, keep)
            }
            None => {
                let mut store = match new_store(core, &self.ctx, hook) {
                    Ok(s) => s,
                    Err(e) => return (Err(e), CallStats::default()),
                };
                self.starts.fetch_add(1, Ordering::Relaxed);
                arm(&mut store, hook, limits);
                let mut made: Option<Instance> = None;
                let outcome = under_deadline(limits, async {
                    let instance = core.pre.instantiate_async(&mut store).await?;
                    made = Some(instance);
                    let exports = Exports {
                        instance,
                        indices: &core.indices,
                    };
                    f(&exports, &mut store).await
                })
                .await;
                let result = settle(outcome, store.data_mut(), limits);
                let logs = store.data().logs.finish();
                let keep = match made {
                    Some(instance) if keeps_store(&result) => Some(Kept {
                        store,
                        instance,
                        calls: 1,
                    }),
                    _ => None,
                };
                (result, logs, keep)
            }
        };
        *slot = keep;
        (
            result,
            CallStats {
                elapsed: started.elapsed(),
                logs,
            },
        )
    }
}

/// A Store stays usable after a value or a hook error; after a trap, a deadline (the guest may
/// have been cut off mid-operation) or a refused setup it is dropped.
fn keeps_store<T>(result: &Result<T, CallFailure>) -> bool {
    matches!(
        result,
        Ok(_) | Err(CallFailure::Hook(_)) | Err(CallFailure::Denied { guest: Some(_), .. })
    )
}
