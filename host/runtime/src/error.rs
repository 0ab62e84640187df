//! Errors of the addon runtime. Loading an addon fails with a [`LoadError`] that names the file
//! and says what to do; a hook call fails with a [`CallError`] whose [`CallFailure`] says what
//! went wrong inside the sandbox. Neither ever takes the host down.

use std::path::PathBuf;
use std::time::Duration;

use crate::wit::{Hook, HookError};

/// Why an addon file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read addon file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not a WebAssembly file ({detail})")]
    NotWasm { origin: String, detail: String },
    #[error(
        "{origin}: is a core WebAssembly module, not a component; build addons for the \
         wasm32-wasip2 target (`cargo build --target wasm32-wasip2`) so the output is a component"
    )]
    CoreModule { origin: String },
    #[error("{origin}: invalid or truncated component: {detail}")]
    Invalid { origin: String, detail: String },
    #[error(
        "{origin}: targets Shoal addon API {found}, but this host supports {supported}; rebuild \
         the addon with a shoal-sdk for API {supported}, or run a Shoal that supports {found}"
    )]
    ApiVersion {
        origin: String,
        found: String,
        supported: String,
    },
    #[error(
        "{origin}: not a Shoal addon: it exports none of the shoal:addon interfaces (it exports: \
         {exports}); an addon is a library crate that calls shoal_sdk::export_engine!"
    )]
    NotAnAddon { origin: String, exports: String },
    #[error("{origin}: lacks required exports: {missing}")]
    MissingExports { origin: String, missing: String },
    #[error("{origin}: imports something this host does not provide: {detail}")]
    UnsupportedImport { origin: String, detail: String },
    #[error("{origin}: the manifest hook failed: {source}")]
    Manifest {
        origin: String,
        #[source]
        source: Box<CallError>,
    },
    #[error("{origin}: invalid manifest: {detail}")]
    BadManifest { origin: String, detail: String },
    #[error(
        "{origin}: calls itself {engine:?}, but the operator's grants for {engine} are pinned to \
         other addon digests than sha256:{digest}; add the digest to grants.{engine}.digests if \
         this addon is trusted"
    )]
    GrantPin {
        origin: String,
        engine: String,
        digest: String,
    },
    #[error("compiled-code cache at {path}: {detail}")]
    Cache { path: PathBuf, detail: String },
}

/// Why a hook call did not return a value.
#[derive(Debug, thiserror::Error)]
#[error("addon {addon}, hook {hook}: {failure}")]
pub struct CallError {
    /// Engine name of the addon (or its file name before the manifest is known).
    pub addon: String,
    /// The hook that was called.
    pub hook: Hook,
    /// What went wrong.
    pub failure: CallFailure,
}

impl CallError {
    /// The hook's own error, when the addon returned one.
    pub fn hook_error(&self) -> Option<&HookError> {
        match &self.failure {
            CallFailure::Hook(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the addon does not implement the hook.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.failure, CallFailure::Hook(HookError::Unsupported))
    }

    /// Whether trying again may succeed: the addon said `retryable`, or the call ran out of
    /// time (a slow server, not a broken one).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.failure,
            CallFailure::Hook(HookError::Retryable(_)) | CallFailure::Deadline { .. }
        )
    }
}

/// Which deadline stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineCause {
    /// Guest code ran past the deadline (epoch interruption: CPU loops and long computations).
    Epoch,
    /// The call as a whole ran past the deadline while blocked in I/O or a host call.
    WallClock,
}

/// What went wrong in one hook call.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// The addon returned an error of its own.
    #[error("{}", describe_hook_error(.0))]
    Hook(HookError),
    /// The call ran past its deadline and was stopped.
    #[error("exceeded its {limit:?} deadline ({})", match .cause {
        DeadlineCause::Epoch => "stopped while running guest code",
        DeadlineCause::WallClock => "stopped while blocked on I/O or a host call",
    })]
    Deadline {
        limit: Duration,
        cause: DeadlineCause,
    },
    /// The addon tried to grow its memory beyond the cap.
    #[error("out of memory: tried to grow linear memory to {requested} bytes, over the {limit}-byte cap")]
    OutOfMemory { limit: u64, requested: u64 },
    /// The addon panicked.
    #[error("addon panicked: {0}")]
    Panic(String),
    /// The sandbox refused something the addon tried; the call then failed.
    #[error("denied by the sandbox: {}{}", .denials.join("; "), .guest.as_ref().map(|g| format!(" (addon said: {g})")).unwrap_or_default())]
    Denied {
        denials: Vec<String>,
        guest: Option<String>,
    },
    /// Any other trap (unreachable, stack overflow, bad memory access, …).
    #[error("trapped: {0}")]
    Trap(String),
    /// A backup stream failed (a write or the final flush) and the output is incomplete.
    #[error("the stream failed, output incomplete: {0}")]
    Stream(String),
    /// No instance slot was free; retry later.
    #[error("runtime busy: {0}")]
    Busy(String),
    /// The host could not set the call up (missing preopen directory, …).
    #[error("could not set up the call: {0}")]
    Setup(String),
}

/// How an error says the addon does not implement the hook (callers that relay errors as
/// text can still tell "not written" from "failed").
pub const UNSUPPORTED_TEXT: &str = "not supported by this addon";

fn describe_hook_error(e: &HookError) -> String {
    match e {
        HookError::Unsupported => UNSUPPORTED_TEXT.into(),
        HookError::InvalidInput(m) => format!("invalid input: {m}"),
        HookError::Retryable(m) => format!("retryable failure: {m}"),
        HookError::Failed(m) => format!("failed: {m}"),
    }
}
