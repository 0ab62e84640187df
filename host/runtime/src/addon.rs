//! A loaded addon version: its verified manifest, where it came from, its effective per-hook
//! limits and sandbox, and the pre-linked `InstancePre` every call instantiates from.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

use crate::adapter::ApiVersion;
use crate::cache::CodeSource;
use crate::call::Caller;
use crate::live::LiveInstance;
use crate::sandbox::{CallContext, Sandbox};
use crate::state::HostState;
use crate::wit::{self, AddonManifest, Hook};
use crate::AddonRuntime;

/// The limits one hook call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookLimits {
    /// Deadline of the call (epoch interruption for CPU, wall clock for blocked I/O).
    pub timeout: Duration,
    /// Linear memory cap.
    pub memory_bytes: u64,
    /// Whether the manifest asked for more than the operator allows.
    pub capped: bool,
}

/// Facts about an addon file.
#[derive(Debug, Clone)]
pub struct AddonInfo {
    /// Where it was loaded from (a path or a registry reference).
    pub origin: String,
    /// sha256 of the wasm bytes, hex.
    pub digest: String,
    /// Size of the wasm bytes.
    pub size: u64,
    /// Addon API version it speaks.
    pub api_version: String,
    /// Names of the component's exports.
    pub exports: Vec<String>,
    /// Names of the component's imports.
    pub imports: Vec<String>,
    /// Whether the code was compiled now or mapped from the cache.
    pub code_source: CodeSource,
    /// Time from reading the bytes to a checked manifest.
    pub load_time: Duration,
}

/// Export indices of every hook interface, resolved once per addon version so a call looks up
/// (and type-checks) only the interface it uses.
pub(crate) struct Indices {
    pub metadata: MetadataIndices,
    pub lifecycle: wit::exports::shoal::addon::lifecycle::GuestIndices,
    pub ha: wit::exports::shoal::addon::ha::GuestIndices,
    pub backup: wit::exports::shoal::addon::backup::GuestIndices,
    pub config: wit::exports::shoal::addon::config::GuestIndices,
    pub telemetry: wit::exports::shoal::addon::telemetry::GuestIndices,
    /// `None`: the addon does not export `data` (API 0.1.0); its hooks are unsupported.
    pub data: Option<wit::exports::shoal::addon::data::GuestIndices>,
}

/// The `metadata` interface of this API, or of 0.1.0 (whose `hook` enum is shorter).
pub(crate) enum MetadataIndices {
    Current(wit::exports::shoal::addon::metadata::GuestIndices),
    V0_1_0(wit::since_v0_1_0::exports::shoal::addon::metadata::GuestIndices),
}

impl Indices {
    /// Resolve every interface's export indices of a component speaking `api` (0.1.0 ones
    /// already adapted, see `crate::adapter`).
    pub(crate) fn new(pre: &InstancePre<HostState>, api: ApiVersion) -> wasmtime::Result<Self> {
        use wit::exports::shoal::addon as x;
        let metadata = match api {
            ApiVersion::V0_2_0 => MetadataIndices::Current(x::metadata::GuestIndices::new(pre)?),
            ApiVersion::V0_1_0 => MetadataIndices::V0_1_0(
                wit::since_v0_1_0::exports::shoal::addon::metadata::GuestIndices::new(pre)?,
            ),
        };
        Ok(Indices {
            metadata,
            lifecycle: x::lifecycle::GuestIndices::new(pre)?,
            ha: x::ha::GuestIndices::new(pre)?,
            backup: x::backup::GuestIndices::new(pre)?,
            config: x::config::GuestIndices::new(pre)?,
            telemetry: x::telemetry::GuestIndices::new(pre)?,
            data: match api {
                ApiVersion::V0_2_0 => Some(x::data::GuestIndices::new(pre)?),
                ApiVersion::V0_1_0 => None,
            },
        })
    }
}

/// The exports of one instantiated addon; each accessor type-checks and returns only the
/// functions of its own interface.
pub(crate) struct Exports<'a> {
    pub instance: Instance,
    pub indices: &'a Indices,
}

macro_rules! export_accessors {
    ($($name:ident),*) => {
        impl Exports<'_> {
            $(
                pub(crate) fn $name(
                    &self,
                    store: &mut Store<HostState>,
                ) -> wasmtime::Result<wit::exports::shoal::addon::$name::Guest> {
                    self.indices.$name.load(store, &self.instance)
                }
            )*
        }
    };
}

export_accessors!(lifecycle, ha, backup, config, telemetry);

impl Exports<'_> {
    /// The `data` interface, if the addon exports it.
    pub(crate) fn data(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Option<wit::exports::shoal::addon::data::Guest>> {
        self.indices
            .data
            .as_ref()
            .map(|d| d.load(store, &self.instance))
            .transpose()
    }

    /// The manifest, whichever API version the addon speaks.
    pub(crate) async fn manifest(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Result<AddonManifest, wit::HookError>> {
        match &self.indices.metadata {
            MetadataIndices::Current(i) => {
                let m = i.load(&mut *store, &self.instance)?;
                m.call_manifest(store).await.map(Ok)
            }
            MetadataIndices::V0_1_0(i) => {
                let m = i.load(&mut *store, &self.instance)?;
                let old = m.call_manifest(store).await?;
                Ok(wit::since_v0_1_0::current_manifest(old).map_err(wit::HookError::Failed))
            }
        }
    }

    /// Type-check every interface the addon exports against this host's WIT (at load, so a
    /// mismatch is a load error rather than a failed call later).
    pub(crate) fn check_all(&self, store: &mut Store<HostState>) -> wasmtime::Result<()> {
        match &self.indices.metadata {
            MetadataIndices::Current(i) => {
                i.load(&mut *store, &self.instance)?;
            }
            MetadataIndices::V0_1_0(i) => {
                i.load(&mut *store, &self.instance)?;
            }
        }
        self.lifecycle(store)?;
        self.ha(store)?;
        self.backup(store)?;
        self.config(store)?;
        self.telemetry(store)?;
        self.data(store)?;
        Ok(())
    }
}

/// How the calls of one hook of a loaded addon went, since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStat {
    pub calls: u64,
    /// Calls that failed in any way (the addon's own errors included).
    pub failures: u64,
    /// Calls stopped at their deadline.
    pub deadline_hits: u64,
    /// The longest call, instantiation included.
    pub max_elapsed: Duration,
    pub total_elapsed: Duration,
}

/// What every call needs: the runtime, the pre-linked component, and the addon's permissions.
pub(crate) struct AddonCore {
    pub rt: AddonRuntime,
    pub pre: InstancePre<HostState>,
    pub indices: Arc<Indices>,
    pub name: Arc<str>,
    pub sandbox: Arc<Sandbox>,
    pub limits: Vec<(Hook, HookLimits)>,
    /// Per hook, in `Hook::ALL` order; written only by [`AddonCore::count`].
    pub stats: std::sync::Mutex<Vec<HookStat>>,
}

impl AddonCore {
    /// Count one call of `hook` that took `elapsed` and ended as `failure` says.
    pub(crate) fn count(
        &self,
        hook: Hook,
        elapsed: Duration,
        failure: Option<&crate::error::CallFailure>,
    ) {
        let Some(at) = Hook::ALL.iter().position(|h| *h == hook) else {
            return;
        };
        let mut all = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() < Hook::ALL.len() {
            all.resize(Hook::ALL.len(), HookStat::default());
        }
        let s = &mut all[at];
        s.calls += 1;
        s.failures += u64::from(failure.is_some());
        s.deadline_hits += u64::from(matches!(
            failure,
            Some(crate::error::CallFailure::Deadline { .. })
        ));
        s.max_elapsed = s.max_elapsed.max(elapsed);
        s.total_elapsed += elapsed;
    }

    pub(crate) fn limits(&self, hook: Hook) -> HookLimits {
        self.limits
            .iter()
            .find(|(h, _)| *h == hook)
            .map(|(_, l)| *l)
            .unwrap_or(HookLimits {
                timeout: self.rt.inner.config.default_timeout(hook),
                memory_bytes: self.rt.inner.config.default_memory_bytes,
                capped: false,
            })
    }
}

/// A verified, loaded addon version. Cheap to clone.
#[derive(Clone)]
pub struct LoadedAddon {
    pub(crate) core: Arc<AddonCore>,
    manifest: Arc<AddonManifest>,
    info: Arc<AddonInfo>,
}

impl std::fmt::Debug for LoadedAddon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAddon")
            .field("engine", &self.manifest.engine)
            .field("addon_version", &self.manifest.addon_version)
            .field("digest", &self.info.digest)
            .finish()
    }
}

impl LoadedAddon {
    pub(crate) fn new(core: Arc<AddonCore>, manifest: AddonManifest, info: AddonInfo) -> Self {
        LoadedAddon {
            core,
            manifest: Arc::new(manifest),
            info: Arc::new(info),
        }
    }

    /// The engine name from the manifest.
    pub fn engine(&self) -> &str {
        &self.manifest.engine
    }

    /// The manifest the addon declared when loaded.
    pub fn manifest(&self) -> &AddonManifest {
        &self.manifest
    }

    /// Facts about the addon file.
    pub fn info(&self) -> &AddonInfo {
        &self.info
    }

    /// The effective limits of `hook`.
    pub fn limits(&self, hook: Hook) -> HookLimits {
        self.core.limits(hook)
    }

    /// How the calls of each hook called since the addon was loaded went, with its limits.
    pub fn hook_stats(&self) -> Vec<(Hook, HookStat, HookLimits)> {
        let all = self.core.stats.lock().unwrap_or_else(|p| p.into_inner());
        Hook::ALL
            .iter()
            .zip(all.iter())
            .filter(|(_, s)| s.calls > 0)
            .map(|(h, s)| (*h, *s, self.core.limits(*h)))
            .collect()
    }

    /// Programs the addon may run: declared in its manifest and granted by the operator,
    /// with the path each resolves to (`None`: granted but not found).
    pub fn exec_grants(&self) -> Vec<(String, Option<std::path::PathBuf>)> {
        self.core
            .sandbox
            .exec
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Programs the manifest declares that the operator has not granted.
    pub fn exec_not_granted(&self) -> &[String] {
        &self.core.sandbox.exec_not_granted
    }

    /// Call hooks, each on a fresh instance, with the permissions of `ctx`.
    pub fn call<'a>(&'a self, ctx: &'a CallContext) -> Caller<'a> {
        Caller::fresh(&self.core, ctx)
    }

    /// A long-lived instance for one database instance: it keeps its state (an open
    /// connection) between calls, is recycled after a trap or timeout and after
    /// `live_recycle_calls` calls, and runs every call under that hook's limits.
    pub fn live(&self, ctx: CallContext) -> LiveInstance {
        LiveInstance::new(self.core.clone(), ctx)
    }
}
