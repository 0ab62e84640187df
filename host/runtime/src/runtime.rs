//! The [`AddonRuntime`]: one wasmtime `Engine` (pooling allocator where the machine allows it,
//! epoch interruption always on), the linker with WASI 0.2 and the `shoal:addon/host`
//! imports, the compiled-code cache, and the epoch ticker thread that drives CPU deadlines.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::CodeCache;
use crate::config::{Pooling, RuntimeConfig};
use crate::error::LoadError;
use crate::loader;
use crate::state::HostState;
use crate::LoadedAddon;

/// Runs addons. Cheap to clone; every clone shares the engine, cache and pool.
#[derive(Clone)]
pub struct AddonRuntime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    pub config: RuntimeConfig,
    pub cache: Option<CodeCache>,
    pub pooling: bool,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot open the compiled-code cache at {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl AddonRuntime {
    /// Start a runtime. Tries the pooling allocator first when `config.pooling` is `Auto` and
    /// falls back to on-demand allocation (with a warning) when the machine refuses the
    /// address-space reservation.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        config.validate().map_err(RuntimeError::Config)?;
        raise_fd_limit();
        let (engine, pooling) = match config.pooling {
            Pooling::Auto => match Engine::new(&engine_config(&config, true)) {
                Ok(e) => (e, true),
                Err(e) => {
                    tracing::warn!(
                        "pooling allocator unavailable ({e:#}); falling back to on-demand \
                         instance allocation"
                    );
                    (new_engine(&config, false)?, false)
                }
            },
            Pooling::Off => (new_engine(&config, false)?, false),
        };
        let linker = new_linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => {
                Some(
                    CodeCache::open(dir, &engine).map_err(|source| RuntimeError::Cache {
                        path: dir.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        spawn_epoch_ticker(&engine, config.epoch_tick)
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(AddonRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                config,
                cache,
                pooling,
            }),
        })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The underlying wasmtime engine (for benchmarks and diagnostics).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Load, verify and describe the addon in `path`.
    pub async fn load_file(&self, path: &Path) -> Result<LoadedAddon, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        self.load_bytes(&path.display().to_string(), bytes).await
    }

    /// Load, verify and describe an addon from its bytes; `origin` names it in errors.
    pub async fn load_bytes(&self, origin: &str, bytes: Vec<u8>) -> Result<LoadedAddon, LoadError> {
        loader::load(self.clone(), origin, bytes).await
    }
}

fn new_engine(config: &RuntimeConfig, pooling: bool) -> Result<Engine, RuntimeError> {
    Engine::new(&engine_config(config, pooling)).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.parallel_compilation(true);
    c.memory_init_cow(true);
    if pooling {
        let n = config.max_instances;
        let mut p = PoolingAllocationConfig::new();
        // A Rust wasm32-wasip2 component instantiates one core module with one memory plus a
        // few shim modules; the totals leave room for that shape at `n` live instances.
        p.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(4))
            .total_stacks(n)
            // One addon instance may not take more than its share of the pool.
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(32)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            // Reset a freed slot by rewriting the pages the instance dirtied instead of
            // unmapping them: the next instance in the slot takes no page faults. Measured on
            // the example addon (2 cores): a fresh trivial call went from ~90 µs to ~40 µs.
            // PAGEMAP_SCAN (Linux >= 6.7) limits the rewrite to pages actually touched.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(256 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

fn new_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::wit::Addon::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Raise the soft limit on open files to the hard limit: every addon socket and file is a
/// host descriptor, and the default soft limit (1024) is small for thousands of instances.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read a plain rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!("cannot raise the open-file limit");
            }
        }
    }
}

/// Increment the engine's epoch every `tick` until the engine is dropped. Without it no CPU
/// deadline would ever fire, so failing to start it fails the runtime.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("shoal-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        })
        .map(|_| ())
}
