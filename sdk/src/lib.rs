//! The Shoal addon SDK: teach Shoal a database engine by implementing [`Engine`] and calling
//! [`export_engine!`] once.
//!
//! ```ignore
//! use shoal_sdk::prelude::*;
//!
//! struct Memcached;
//!
//! impl Engine for Memcached {
//!     fn new() -> Self { Memcached }
//!     fn manifest(&self) -> AddonManifest { /* engine name, versions, ports, limits … */ }
//!     fn probe(&mut self, instance: &Instance, _members: &[Member]) -> HookResult<RoleReport> {
//!         /* connect to instance.endpoint and look */
//!     }
//! }
//!
//! shoal_sdk::export_engine!(Memcached);
//! ```
//!
//! Every hook except [`Engine::manifest`] has a default: `unsupported` for engine actions, and
//! schema-driven answers for [`Engine::validate`] and [`Engine::classify`]. The addon API
//! version is the WIT package version, [`API_VERSION`]; it is stamped into the export names of
//! every addon built with this crate.
//!
//! One engine value lives per addon instance. The host may keep an instance alive across calls
//! (long-lived mode, used for probes), so `&mut self` can cache a connection; it may equally
//! use a fresh instance for every call, so nothing may depend on that cache.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "addon",
        pub_export_macro: true,
        export_macro_name: "__export_addon",
        default_bindings_module: "shoal_sdk::bindings",
    });
}

pub mod accounts;
pub mod encoding;
mod engine;
mod export;
pub mod host;
pub mod http;
pub mod kept;
pub mod markers;
pub mod methods;
pub mod metrics;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod net;
pub mod params;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod resp;
pub mod testing;
pub mod time;

pub use engine::{Engine, HookResult};

/// `manifest_file!("addon.toml")`: the addon manifest, read from that TOML file (relative to
/// the crate's `Cargo.toml`) and checked when the addon is compiled. The format is in
/// `docs/addon-manifest.md`.
pub use shoal_sdk_macros::manifest_file;

/// The addon API version this SDK builds against (the WIT package `shoal:addon` version).
pub const API_VERSION: &str = "0.2.0";

pub use bindings::shoal::addon::types::{
    Credentials, Endpoint, EnvVar, File, HookError, Instance, Member, NamedPort, Param, Resources,
    Value,
};

/// Types of the addon manifest (`shoal:addon/metadata`).
pub mod manifest {
    pub use crate::bindings::exports::shoal::addon::metadata::{
        AddonManifest, ApplyMode, BackupKind, BackupMethod, Capability, ClientInfo, EngineVersion,
        FloatRange, Hook, HookLimit, IntRange, ParamSpec, ParamType, PortSpec, RoleSpec,
        SyncSupport, Topology, TopologyKind,
    };
}

/// Types of the lifecycle hooks (`shoal:addon/lifecycle`).
pub mod lifecycle {
    pub use crate::bindings::exports::shoal::addon::lifecycle::{
        Account, AccountRole, Command, Readiness, RunPlan, StopSignal,
    };
}

/// Types of the HA hooks (`shoal:addon/ha`).
pub mod ha {
    pub use crate::bindings::exports::shoal::addon::ha::{Health, RoleReport};
}

/// Types of the backup hooks (`shoal:addon/backup`).
pub mod backup {
    pub use crate::bindings::exports::shoal::addon::backup::{
        ArchiveUnit, BackupInfo, RecoveryTarget,
    };
    pub use crate::host::{SinkWriter, SourceReader};
}

/// Types of the parameter hooks (`shoal:addon/config`).
pub mod config {
    pub use crate::bindings::exports::shoal::addon::config::{
        ChangeEffect, ClassifiedChange, ParamChange, ParamError,
    };
}

/// Types of the metrics hook (`shoal:addon/telemetry`).
pub mod telemetry {
    pub use crate::bindings::exports::shoal::addon::telemetry::{Label, MetricKind, Sample};
}

/// Everything an addon usually needs, in one `use`.
pub mod prelude {
    pub use crate::backup::{ArchiveUnit, BackupInfo, RecoveryTarget, SinkWriter, SourceReader};
    pub use crate::config::{ChangeEffect, ClassifiedChange, ParamChange, ParamError};
    pub use crate::ha::{Health, RoleReport};
    pub use crate::host::{Exec, ExecOutput};
    pub use crate::kept::Kept;
    pub use crate::lifecycle::{Account, AccountRole, Command, Readiness, RunPlan, StopSignal};
    pub use crate::manifest::*;
    pub use crate::metrics::Metrics;
    pub use crate::telemetry::{Label, MetricKind, Sample};
    pub use crate::{
        Endpoint, Engine, EnvVar, File, HookError, HookResult, Instance, Member, NamedPort, Param,
        Resources, Value,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::export::Provider;
}
