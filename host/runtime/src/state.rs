//! The data of one wasmtime `Store`: the WASI context and resource table of the call, its
//! memory limiter, log accounting, sandbox permissions and recorded denials.

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::logs::Logs;
use crate::sandbox::{Denials, Progress, ProgressFn, RunAs, Sandbox};

/// Caps the linear memory of a Store as a whole (every memory of every core instance
/// together) and remembers the growth it refused, so an out-of-memory trap can be told apart
/// from any other.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub limit: usize,
    pub refused: Option<usize>,
    used: usize,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryLimiter {
            limit,
            refused: None,
            used: 0,
        }
    }
}

/// Most table elements an addon may have (function tables of a large Rust component stay far
/// below this).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Most core instances, memories and tables one addon instance may create. A Rust
/// wasm32-wasip2 component uses a handful of each.
const MAX_CORE_INSTANCES: usize = 32;
const MAX_MEMORIES: usize = 4;
const MAX_TABLES: usize = 32;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.refused = Some(self.refused.map_or(total, |r| r.max(total)));
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// Forwards `host.progress` reports at most every 100 ms, keeping the latest, so a hook
/// reporting in a tight loop cannot flood the receiver; the last report is always delivered.
pub(crate) struct ProgressGate {
    target: Option<ProgressFn>,
    addon: Arc<str>,
    last: Option<Instant>,
    pending: Option<Progress>,
}

const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl ProgressGate {
    pub(crate) fn new(target: Option<ProgressFn>, addon: Arc<str>) -> Self {
        ProgressGate {
            target,
            addon,
            last: None,
            pending: None,
        }
    }

    pub(crate) fn report(&mut self, p: Progress) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY)
        {
            self.pending = Some(p);
            return;
        }
        self.last = Some(now);
        self.pending = None;
        self.deliver(&p);
    }

    /// Deliver the report held back by the rate limit, if any.
    pub(crate) fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            self.deliver(&p);
        }
    }

    pub(crate) fn reset(&mut self) {
        self.last = None;
        self.pending = None;
    }

    fn deliver(&self, p: &Progress) {
        match &self.target {
            Some(f) => f(p),
            None => tracing::debug!(
                target: "shoal::addon",
                addon = %self.addon,
                done = p.done,
                total = p.total,
                "{}",
                p.message
            ),
        }
    }
}

/// Everything a Store of an addon holds.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub addon: Arc<str>,
    pub logs: Logs,
    pub denials: Denials,
    pub sandbox: Arc<Sandbox>,
    pub run_as: Option<RunAs>,
    /// Where this call's host-granted programs are looked up.
    pub exec_dirs: Vec<std::path::PathBuf>,
    pub progress: ProgressGate,
    /// A stream failure the addon may have ignored; fails an otherwise successful call.
    pub sink_error: Option<String>,
    /// Most bytes captured from an exec child's stdout and stderr each.
    pub exec_capture: usize,
    /// When the current call's deadline passes; exec children never outlive it.
    pub deadline: Instant,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_covers_all_memories_together() {
        let mut l = MemoryLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        // A second memory may not take the total past the cap.
        assert!(!l.memory_growing(0, 50, None).unwrap());
        assert_eq!(l.refused, Some(110));
        assert!(l.memory_growing(0, 40, None).unwrap());
        // Growing the first memory counts only the increase.
        assert!(!l.memory_growing(60, 61, None).unwrap());
    }
}
