//! Shoal's addon runtime: it loads database-engine addons (WebAssembly components speaking the
//! `shoal:addon` WIT API), verifies and caches them, and runs their hooks in a sandbox.
//!
//! * [`AddonRuntime`] owns one wasmtime engine (pooling allocator where possible, epoch
//!   interruption on), the linker and the compiled-code cache.
//! * [`LoadedAddon`] is one verified addon version with its manifest and effective limits.
//! * [`Caller`] makes typed hook calls, each on a fresh instance ([`LoadedAddon::call`]) or on
//!   a kept [`LiveInstance`] ([`LoadedAddon::live`]).
//! * [`CallContext`] says what one call may reach: endpoints, preopened directories, the OS
//!   user for `exec`.
//!
//! Every trap, panic, deadline, out-of-memory or sandbox denial becomes a [`CallError`] for that
//! one call; the host and every other call carry on. The runtime knows nothing about any
//! particular engine.

mod adapter;
mod addon;
mod cache;
mod call;
pub mod config;
mod error;
mod imports;
mod live;
mod loader;
mod logs;
pub mod params;
mod runtime;
mod sandbox;
mod state;
mod streams;
pub mod wit;

pub use adapter::ApiVersion;
pub use addon::{AddonInfo, HookLimits, HookStat, LoadedAddon};
pub use cache::CodeSource;
pub use call::{CallStats, Caller};
pub use config::{Grants, Pooling, RuntimeConfig};
pub use error::{CallError, CallFailure, DeadlineCause, LoadError, UNSUPPORTED_TEXT};
pub use imports::set_engine_open_files;
pub use live::LiveInstance;
/// Whether a client shell element is an environment assignment (`NAME=VALUE`).
pub use loader::is_env_assignment;
pub use logs::LogStats;
pub use runtime::{AddonRuntime, RuntimeError};
pub use sandbox::{CallContext, Preopen, Progress, ProgressFn, RunAs};
pub use streams::{HostSink, HostSource};

/// Version of this host.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
