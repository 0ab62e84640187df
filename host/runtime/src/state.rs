//! The data of one wasmtime `Store`: the WASI context and resource table of the call, its
//! memory limiter, log accounting, sandbox permissions and recorded denials.

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::logs::Logs;
use crate::sandbox::{Denials, ProgressFn, RunAs, Sandbox};

/// Caps linear memory growth and remembers the growth it refused, so an out-of-memory trap can
/// be told apart from any other.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub limit: usize,
    pub refused: Option<usize>,
}

/// Most table elements an addon may have (function tables of a large Rust component stay far
/// below this).
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = Some(self.refused.map_or(desired, |r| r.max(desired)));
            return Ok(false);
        }
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
    pub progress: Option<ProgressFn>,
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
