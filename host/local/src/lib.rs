//! Shoal's local runtime: engine instances as processes on this machine.
//!
//! * [`process`]: start detached, identify by pid + start time, stop, run one-shot commands.
//! * [`users`]: the unprivileged OS user engines run as when the host is root.
//! * [`ports`]: free ports from a configured range.
//! * [`binaries`]: finding an engine version's programs, with install hints.
//! * [`cgroups`]: resource limits where cgroup v2 allows it.
//!
//! It knows nothing about any engine: what to run comes from the addon's run-spec.

pub mod binaries;
pub mod cgroups;
pub mod ports;
pub mod process;
pub mod users;

pub use binaries::BinarySearch;
pub use process::{log_tail, ProcessId, ProcessSpec};
pub use users::RunAs;

/// Why the local runtime could not do something.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    User(String),
    #[error("{0}")]
    Ports(String),
    #[error("{0}")]
    Binary(String),
}

impl LocalError {
    pub(crate) fn io(what: String, source: std::io::Error) -> Self {
        LocalError::Io { what, source }
    }
}
